import sys

from bt_vmm.cli.main import main

sys.exit(main())
