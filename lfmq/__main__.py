from lfmq.cli import main

main()
