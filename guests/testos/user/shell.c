/* testos shell: reads lines from the serial port (read(0, ...), which
 * blocks on the COM1 receive interrupt), echoes what is typed and runs a
 * few commands. */
#include "testos/user/ulib.h"

static int last_cr;

/* Read one line with echo and backspace.  CR, LF and CR LF all end it. */
static int readline(char *buf, int size)
{
    int n = 0;
    for (;;) {
        char c;
        int r = read(0, &c, 1);
        if (r < 0)
            return -1;
        if (r == 0)
            continue;
        if (c == '\n' && last_cr) {
            last_cr = 0;
            continue;
        }
        last_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            write(1, "\n", 1);
            buf[n] = 0;
            return n;
        }
        if (c == 0x7F || c == 0x08) {
            if (n) {
                n--;
                write(1, "\b \b", 3);
            }
            continue;
        }
        if (c < 0x20 || c > 0x7E || n >= size - 1)
            continue;
        buf[n++] = c;
        write(1, &c, 1);
    }
}

static const char *const state_names[] = { "unused", "embryo", "ready", "run", "sleep", "zombie" };

static void cmd_ps(void)
{
    struct sys_procinfo pi;
    printf("  PID  PPID STATE   TICKS PAGES NAME\n");
    for (int slot = 0; slot < 1024; slot++) {
        int r = procinfo(slot, &pi);
        if (r == -EINVAL)
            break;
        if (r < 0)
            continue;
        printf("%5d %5d %-7s %5u %5u %s\n", pi.pid, pi.ppid,
               pi.state >= 0 && pi.state <= 5 ? state_names[pi.state] : "?", pi.uticks, pi.pages,
               pi.name);
    }
}

static void cmd_disk(void)
{
    struct sys_diskinfo di;
    static uint8_t sec[512];
    if (diskinfo(&di) < 0) {
        printf("disk: none\n");
        return;
    }
    printf("disk: ata0 master, %u sectors (%u KiB), model \"%s\"\n", di.sectors, di.sectors / 2,
           di.model);
    int r = diskread(0, sec, 1);
    if (r < 0) {
        printf("disk: reading sector 0 failed (%d)\n", r);
        return;
    }
    printf("sector 0:");
    for (int i = 0; i < 16; i++)
        printf(" %02x", sec[i]);
    printf(" ...\n");
}

static void cmd_forkwait(const char *arg)
{
    char msg[160];
    int n = *arg ? atoi(arg) : 200;
    int r = forkwait(n, msg, sizeof(msg));
    printf("forkwait: %s%s\n", msg, r == n ? "" : " (FAILED)");
}

static void cmd_help(void)
{
    puts("commands:\n"
           "  help          this list\n"
           "  echo ARGS     print ARGS\n"
           "  forkwait [N]  fork N children (default 200), reap them, check their statuses\n"
           "  ps            list processes\n"
           "  ticks         timer ticks since boot\n"
           "  disk          disk size, model and the start of sector 0\n"
           "  exit          power off\n");
}

void shell(void)
{
    char line[128];
    printf("testos shell, pid %d; type 'help'\n", getpid());
    for (;;) {
        puts("testos> ");
        if (readline(line, sizeof(line)) < 0) {
            printf("shell: read failed\n");
            return;
        }
        char *cmd = line;
        while (*cmd == ' ')
            cmd++;
        char *arg = cmd;
        while (*arg && *arg != ' ')
            arg++;
        if (*arg)
            *arg++ = 0;
        while (*arg == ' ')
            arg++;
        if (!*cmd)
            continue;
        if (!strcmp(cmd, "help"))
            cmd_help();
        else if (!strcmp(cmd, "echo"))
            printf("%s\n", arg);
        else if (!strcmp(cmd, "forkwait"))
            cmd_forkwait(arg);
        else if (!strcmp(cmd, "ps"))
            cmd_ps();
        else if (!strcmp(cmd, "ticks")) {
            uint32_t t = ticks();
            printf("ticks: %u (%u.%02u s at 100 Hz)\n", t, t / 100, t % 100);
        } else if (!strcmp(cmd, "disk"))
            cmd_disk();
        else if (!strcmp(cmd, "exit")) {
            printf("bye\n");
            return;
        } else
            printf("unknown command: %s (try 'help')\n", cmd);
    }
}
