from unitsync.cli.main import main

main()
