//! twill subnet allocator.
