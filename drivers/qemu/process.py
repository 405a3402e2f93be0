"""Starting, finding and stopping QEMU processes, so guests outlive pyvirtd.

Contract:

    pid = await launch(argv, log_path=..., pid_path=...)   # QEMU daemonizes (-daemonize,
          # -pidfile); its own error text (stderr before daemonizing) is raised as
          # VirError(VIR_ERR_INTERNAL_ERROR, "process exited while connecting to monitor: <text>")
    alive = is_running(pid, marker)        # the pid is still *that* QEMU (cmdline holds marker)
    await terminate(pid, graceful=True)    # SIGTERM, wait, SIGKILL unless graceful
"""
