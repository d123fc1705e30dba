import os

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people, not test logs
os.environ.setdefault("OMP_NUM_THREADS", "2")
