from p3dmm.cli import main

raise SystemExit(main())
