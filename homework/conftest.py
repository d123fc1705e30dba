# The homework notebooks are blank by design (their cells raise NotImplementedError): never let
# `pytest --nbval` execute them, even when pointed at this folder.
collect_ignore_glob = ["*.ipynb"]
