/*
 * pause: the sandbox ("infra") process of a pod, for localhost/pause:3.10 (hack/build-images.sh).
 *
 * It holds the pod's namespaces open and does nothing else:
 *   - SIGINT / SIGTERM: exit 0 at once (the runtime is tearing the sandbox down);
 *   - SIGCHLD: reap every exited child (as PID 1 of a shared PID namespace it inherits orphans);
 *   - otherwise sleep in pause() forever.
 * Built static (gcc -static -Os) so the image is FROM scratch with this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PAUSE_VERSION
#define PAUSE_VERSION "poolbench-3.10"
#endif

static void on_shutdown(int signo)
{
    (void)signo;
    _exit(0);
}

static void on_child(int signo)
{
    int saved = errno;
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static void install(int signo, void (*handler)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) < 0) {
        perror("pause: sigaction");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("pause %s\n", PAUSE_VERSION);
        return 0;
    }
    if (getpid() != 1)
        fprintf(stderr, "pause: warning: not running as PID 1 (pid %d)\n", (int)getpid());

    install(SIGINT, on_shutdown, 0);
    install(SIGTERM, on_shutdown, 0);
    install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART);

    for (;;)
        pause();

    fprintf(stderr, "pause: the wait loop ended\n");
    return 42;
}
