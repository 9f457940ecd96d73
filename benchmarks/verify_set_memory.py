import sys, tracemalloc
from edgeseg.data import open_dataset
from edgeseg.export.verify import load_verify_set
from edgeseg.spec import PreprocessSpec
data = sys.argv[1]
spec = PreprocessSpec(window=(-1000.0, 200.0), size=(256, 256))
payload = {"class_names": ["background", "liver"]}
vol = open_dataset(data.replace("cases=4", "cases=1"))[0]
one = vol.hu.nbytes; del vol
tracemalloc.start()
s = load_verify_set(payload, spec, data, 64)
peak = tracemalloc.get_traced_memory()[1]
print(f"{data}: {len(s.images)} slices, peak {peak/2**30:.2f} GiB = {peak/one:.1f}x one case's HU ({one/2**20:.0f} MiB)")
