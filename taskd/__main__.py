from taskd.cli import main

raise SystemExit(main())
