/* testos init (pid 1): runs the user-mode self-tests, then, with "shell"
 * on the command line, the interactive shell as a child process.  When
 * init exits the kernel powers off (or reports failures). */
#include "testos/user/ulib.h"

int umain(void)
{
    char args[256];
    int shell_mode = 0, fw = 200;
    setname("init");
    if (getargs(args, sizeof(args)) < 0)
        args[0] = 0;
    /* Keywords anywhere on the command line; the loader puts the kernel's
     * file name first, which simply matches nothing. */
    for (char *p = args; *p;) {
        while (*p == ' ')
            p++;
        char *w = p;
        while (*p && *p != ' ')
            p++;
        char save = *p;
        *p = 0;
        if (!strcmp(w, "shell"))
            shell_mode = 1;
        else if (!strncmp(w, "forkwait=", 9))
            fw = atoi(w + 9);
        *p = save;
    }
    run_tests(fw);
    testdone();
    if (shell_mode) {
        int pid = fork();
        if (pid == 0) {
            setname("shell");
            shell();
            exit(0);
        }
        if (pid < 0) {
            printf("init: cannot fork the shell (%d)\n", pid);
            return 1;
        }
        int st;
        while (wait(&st) != pid)
            ;
    }
    return 0;
}
