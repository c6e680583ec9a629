from predkern.cli import main

raise SystemExit(main())
