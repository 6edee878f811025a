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


def test_keep_freed_memory_cuts_page_faults_on_reallocation():
    pages_per_tensor = 2**26 // 4096
    default = faults("default")
    assert default > 4 * pages_per_tensor  # glibc returns and re-faults the block: 5 faults per page
    # Kept blocks are reused, but this VM's kernel intermittently reclaims some of the retained
    # pages (measured: 1 to 4 of the 5 reallocations re-fault, 16384..65537 faults), so the best
    # of three runs must save at least one full reallocation; doing nothing saves none.
    assert min(faults("keep") for _ in range(3)) < default - 0.8 * pages_per_tensor
