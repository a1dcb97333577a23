"""End-to-end jobs: validate inputs, compute with the library, write outputs via report/."""
