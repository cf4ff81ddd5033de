/* The forkwait workload: fork N children that each exit with a distinct
 * status, reap them all and check every status. */
#include "testos/user/ulib.h"

#define FW_MAX  1024
#define FW_BASE 1000                /* child i exits with FW_BASE + i */

static int fw_pids[FW_MAX];
static uint8_t fw_done[FW_MAX];

void forkwait_touch(void)
{
    memset(fw_pids, 0, sizeof(fw_pids));
    memset(fw_done, 0, sizeof(fw_done));
}

/* Returns n on success, -1 on failure; msg gets a one-line account.  If
 * the process table or memory runs out, reap a child and go on forking. */
int forkwait(int n, char *msg, size_t len)
{
    if (n < 1 || n > FW_MAX) {
        snprintf(msg, len, "N must be 1..%d", FW_MAX);
        return -1;
    }
    memset(fw_done, 0, (size_t)n);
    int forked = 0, reaped = 0, bad = 0, slot_waits = 0;
    uint32_t t0 = ticks();
    while (reaped < n) {
        if (forked < n) {
            int pid = fork();
            if (pid == 0)
                exit(FW_BASE + forked);
            if (pid > 0) {
                fw_pids[forked++] = pid;
                continue;
            }
            if (forked == reaped) {
                snprintf(msg, len, "fork failed (%d) with no children left", pid);
                return -1;
            }
            slot_waits++;
        }
        int st = -1, pid = wait(&st);
        if (pid < 0) {
            snprintf(msg, len, "wait failed (%d) after %d of %d children", pid, reaped, n);
            return -1;
        }
        int i = 0;
        while (i < forked && fw_pids[i] != pid)
            i++;
        if (i == forked || fw_done[i] || st != FW_BASE + i)
            bad++;
        else
            fw_done[i] = 1;
        reaped++;
    }
    snprintf(msg, len, "%d children forked and reaped, %d bad statuses, %d waits for a free slot, %u ticks",
             n, bad, slot_waits, ticks() - t0);
    return bad ? -1 : n;
}
