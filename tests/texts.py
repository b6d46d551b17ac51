"""Short real texts the tests share."""

# Eight real sentences (from the Python tutorial's prose style), one short document each.
DOCS = [
    "Python is an easy to learn, powerful programming language with efficient data structures.",
    "The interpreter and the extensive standard library are freely available in source form.",
    "Lists might contain items of different types, but usually the items all have the same type.",
    "A function definition associates a function name with the function object in the table.",
    "Exceptions are raised when an error is detected during execution of a program statement.",
    "Modules can import other modules, and it is customary to place all imports at the top.",
    "The with statement allows objects like files to be used in a way that cleans them up.",
    "Strings can be concatenated with the plus operator and repeated with the star operator.",
]
