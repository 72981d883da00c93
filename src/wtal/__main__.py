from wtal.cli import main

raise SystemExit(main())
