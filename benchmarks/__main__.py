"""``python -m benchmarks``: see :mod:`benchmarks` and ``--help``.

``python -m benchmarks agent``: the local agent's latency over loopback (benchmarks/agent.py).
"""

import sys

from .harness import main

if sys.argv[1:2] == ["agent"]:
    from .agent import main as agent_main

    sys.exit(agent_main(sys.argv[2:]))

sys.exit(main())
