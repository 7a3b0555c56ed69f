//! The trainer (in progress).
