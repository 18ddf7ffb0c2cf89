from unitsync.cli.app import main

main()
