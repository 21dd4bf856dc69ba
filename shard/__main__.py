from shard.main import main

raise SystemExit(main())
