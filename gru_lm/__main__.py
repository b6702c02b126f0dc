from gru_lm.cli.main import main

main()
