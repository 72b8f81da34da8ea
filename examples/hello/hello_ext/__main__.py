"""Runs inside the sandbox: reads a file of its module, writes to /tmp, uses numpy."""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "greeting.txt")) as f:
    greeting = f.read().strip()

with open("/tmp/hello_ext.out", "w") as f:
    f.write(greeting)
with open("/tmp/hello_ext.out") as f:
    assert f.read() == greeting

try:
    import numpy as np
    total = int(np.arange(10).sum())
except ImportError as e:  # numpy comes from Debian's python3-numpy
    print(f"hello_ext: numpy missing: {e}", file=sys.stderr)
    sys.exit(3)

print(f"hello_ext: {greeting}; wrote /tmp/hello_ext.out; numpy {np.__version__} sum={total}; "
      f"pid={os.getpid()} uid={os.getuid()} extension={os.environ.get('PYISOLATE_EXTENSION')}")
