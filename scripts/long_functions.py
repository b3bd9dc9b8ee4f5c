#!/usr/bin/env python3
"""Lists functions of C files longer than a limit (default 120 lines): a definition starts at a
line in column 0 that ends a signature with '{' on the next line or the same line, and ends at
the next '}' in column 0. Usage: python3 scripts/long_functions.py [--max N] FILE.c ..."""
import re
import sys


def functions(path):
    lines = open(path, encoding='utf-8', errors='replace').read().split('\n')
    start = name = None
    for i, line in enumerate(lines):
        if start is None and line == '{' and i > 0:
            j = i - 1
            while j > 0 and lines[j] and not re.match(r'^[A-Za-z_]', lines[j]):
                j -= 1
            m = re.search(r'([A-Za-z_][A-Za-z0-9_]*)\s*\(', lines[j])
            if m and not lines[j].startswith(('struct', 'typedef', 'enum', 'static const', 'const')):
                start, name = j, m.group(1)
        elif start is not None and line.startswith('}'):
            yield name, start + 1, i - start + 1
            start = None


def main():
    args = sys.argv[1:]
    limit = 120
    if args[:1] == ['--max']:
        limit, args = int(args[1]), args[2:]
    bad = 0
    for path in args:
        for name, line, n in functions(path):
            if n > limit:
                print(f'{path}:{line}: {name} is {n} lines (limit {limit})')
                bad += 1
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
