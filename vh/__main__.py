from vh.cli import main

main()
