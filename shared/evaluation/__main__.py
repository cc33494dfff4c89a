from shared.evaluation.evaluate import main

main()
