"""The `unitsync` command line: the commands, a thin face on the blocking client.

    main           the entry point: a hot command's plain form by the shortcut, the rest by app
    shortcut       the hot commands' plain forms, recognised before cyclopts is imported
    hot            the hot commands' bodies (ping, want, start, complete, fail, run), one each
    app            the commands and their options (cyclopts): the command line's definition
    usage          usage errors as one plain line, with the command's usage line
    durations      durations as typed (`30s`, `5m`; 0 is forever)
    sizes          sizes as typed (`8M`, `512K`; `run --log-limit`)
    progress       what `start` shows while it waits
    render         `status`: a table, one unit, JSON, Graphviz dot, Mermaid
    watch          `status --watch`: a live table, or JSON lines
    live_columns   which columns the live table shows, to fit the terminal
    cells          terminal columns: how wide text is, text cut to a width
    words          words as bytes and as text; how a shell takes a command back
    say            one line to stderr in one write
    completion     `--install-completion` (loaded only then)
    agent_command  `unitsync agent` (the one command that imports the agent, when run)
    run/           `sync run`: the supervisor of a command, its readiness, its hold on the unit
    logs           `sync logs`: a unit's kept output; a failed unit's last lines for `status`
    timeline/      `timeline`, `critical-chain`, `blame`: the model and its views

Start-up time is a feature: a hot command's plain form loads msgspec and the blocking client
only (`tests/test_shortcut.py`); importing `app` adds cyclopts, never trio and never the agent
(`tests/test_layers.py`); the rest is loaded by the command that uses it.
"""
