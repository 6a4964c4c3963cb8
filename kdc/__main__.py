from kdc.cli import main

main()
