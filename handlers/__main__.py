from handlers.demo import main

main()
