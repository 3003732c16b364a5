from uhd_cli.main import main

main()
