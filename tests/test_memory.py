import subprocess
import sys

CODE = """
import resource, sys, torch
import s5ssm.memory as m
if sys.argv[1] == "keep":
    assert m.keep_freed_memory()
torch.ones(2**24).sum()  # 64 MB: first touch faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(2**24).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_keep_freed_memory_stops_page_faults_on_reallocation():
    pages_per_tensor = 2**26 // 4096
    assert faults("default") > 4 * pages_per_tensor  # glibc returns and re-faults the block
    assert faults("keep") <= 1.5 * pages_per_tensor  # at most one more first touch, then reuse
