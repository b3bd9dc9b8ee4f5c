"""python -m xattn ARGS: the command-line tool (the `xattn` executable installed in the package)."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _tool():
    for path in (os.path.join(_HERE, "bin", "xattn"),
                 os.path.join(os.path.dirname(os.path.dirname(_HERE)), "build", "xattn")):
        if os.access(path, os.X_OK):
            return path
    sys.exit("xattn: the command-line tool was not installed with the package (pip install .)")


def main():
    tool = _tool()
    os.execv(tool, [tool] + sys.argv[1:])


if __name__ == "__main__":
    main()
