"""The CLI in-process, for the tests of its commands."""
from onnxlm.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """main(argv) in-process -> (exit code, stdout, stderr); argparse's SystemExit is turned into its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
