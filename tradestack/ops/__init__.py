"""Operations: what the ``tradestack`` command does beyond starting processes.

``processes``  what the stack is made of: its processes, their settings, units and streams
``status``     ``tradestack status``: services, streams, leases, positions, PnL, last decision and fill
``preflight``  ``tradestack preflight``: the go-live checklist, one function per check
``golive``     ``tradestack golive``: preflight, two approvers, then the dated go-live record
``summary``    the summary ``tradestack up --for`` ends with
``logprefix``  children's log lines prefixed with their process name
"""
