//! `trident explain`: what a transformer does with one text, step by step, with the numbers
//! the model computes (core's [`probe`](trident_core::nn::probe) on the shared blocks).

pub mod trace;
