"""`python -m benchmarks.peers [ARGS]` (from the repository root): the peer benchmark (``cli.py``), or one of the
internal entry points its child processes run: ``--_worker PAYLOAD`` (``worker.py``), ``--_profile PAYLOAD``
(``op_profile.py``), ``--_bandwidth THREADS`` (``limits.py``). Each child imports only its own module, so the
llama.cpp worker runs in a venv that has numpy and llama_cpp and nothing else of this project."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_worker"] and len(argv) == 2:
        from .worker import worker_main

        return worker_main(argv[1])
    if argv[:1] == ["--_profile"] and len(argv) == 2:
        from .op_profile import profile_main

        return profile_main(argv[1])
    if argv[:1] == ["--_bandwidth"] and len(argv) == 2:
        from .limits import bandwidth_main

        return bandwidth_main(argv[1])
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
