"""How a service under `run` says it is ready (SPEC §8): one detector per option.

    detector       what a detector is (`Detector`) and where it reports (`Listener`)
    options        the options as given, checked, and the detector they ask for
    probe          `--ready-cmd`: a shell command run every interval until it exits 0
    output         `--ready-log`: the service's output copied, searched for a line
    notify_socket  `--notify`: READY=1 on a private NOTIFY_SOCKET, from the service's tree

A detector's module is loaded only when its option is given.
"""
