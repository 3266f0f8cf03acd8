from vitdetect.cli import main

main()
