"""Translation-cache profiles: recording a run's TC behaviour and inspecting it.

* `TCRecorder` (recorder.py) is the observer the TCache and the engine call on
  every translation, chain, invalidation, flush and callout; at the end of the
  run it turns what it saw, plus the CCFs' own execution counters, into a
  profile document (`bt-vmm run --tc-profile FILE`).
* format.py is the file: one gzip'd JSON document, versioned; its docstring is
  the schema.
* `load_profile` / `Profile` (profile.py) is the Python API, and what the
  `bt-vmm tc stats|top|show|timeline` commands (cli.py, render.py,
  timeline.py) print.
* live.py is the `bt-vmm run --stats live` panel.
"""

from bt_vmm.tcprofile.format import FORMAT, VERSION, read_profile, write_profile
from bt_vmm.tcprofile.profile import CCFRecord, Profile, load_profile
from bt_vmm.tcprofile.recorder import TCRecorder

__all__ = ["FORMAT", "VERSION", "TCRecorder", "Profile", "CCFRecord", "load_profile",
           "read_profile", "write_profile"]
