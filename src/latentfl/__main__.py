from latentfl.cli import main

raise SystemExit(main())
