"""Test helper run inside sandboxes of one isolation group.

  holder.py create NAME SIZE   create /dev/shm/NAME (SIZE bytes, a pattern),
                               keep it mapped, print "ready SHA256", then
                               sleep until killed or stdin closes
  holder.py open NAME          print "opened SHA256" or "missing ERRNO"
"""
import hashlib
import mmap
import os
import sys
import time

SHM = os.environ.get("PYISOLATE_SHM_DIR", "/dev/shm")


def create(name, size):
    path = os.path.join(SHM, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED)
    os.close(fd)
    pattern = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mm[:] = pattern
    print("ready", hashlib.sha256(mm).hexdigest(), flush=True)
    while True:  # keep the mapping until killed
        time.sleep(3600)


def open_(name):
    try:
        with open(os.path.join(SHM, name), "rb") as f:
            print("opened", hashlib.sha256(f.read()).hexdigest(), flush=True)
    except OSError as e:
        print("missing", e.errno, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]))
    else:
        open_(sys.argv[2])
