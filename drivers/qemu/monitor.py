"""QMP monitor of one running QEMU: the only module that speaks QMP.

Contract (used by the driver; implemented by the runtime work):

    mon = await Monitor.connect(socket_path)          # greeting + qmp_capabilities
    reply = await mon.execute("query-status")          # -> dict (the "return" value)
    await mon.execute("cont")
    async for event in mon.events():                   # {"event": "SHUTDOWN", "data": {...}, "timestamp": ...}
        ...                                            # ends when QEMU closes the monitor
    await mon.close()

Typed helpers for the commands the driver needs (query_status, cont, stop,
system_powerdown, system_reset, quit, query_chardev -> pty paths, ...) live
here too, one short method each.  Failures are VirError with context:
a QMP error reply -> VIR_ERR_OPERATION_FAILED "... : <QEMU's desc>", a lost
connection mid-call -> VIR_ERR_OPERATION_FAILED "QEMU monitor connection lost"
(and EOFError after `quit` is expected and swallowed).
"""
