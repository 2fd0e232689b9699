//! Open `.mmt` stores by mmap (in progress).
