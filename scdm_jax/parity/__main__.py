"""CLI: python -m scdm_jax.parity FILE.npz [FILE.npz ...]"""

import sys

from scdm_jax import parity


def main(argv: list[str]) -> int:
  if not argv:
    print(__doc__, file=sys.stderr)
    return 2
  failed = 0
  for path in argv:
    try:
      kind, results = parity.check_file(path)
    except (OSError, ValueError, KeyError) as e:
      print(f"{path}: error: {e}", file=sys.stderr)
      failed += 1
      continue
    print(parity.format_report(path, kind, results))
    failed += sum(not r.ok for r in results)
  print(f"parity: {'FAILED' if failed else 'all arrays within tolerance'}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
