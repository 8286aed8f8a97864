//! The tier a test harness builds its CPU for — tier 0, or every block forced through the JIT —
//! and `jit_forced!`, which runs listed tests again with the JIT forced (tier 1 must give tier
//! 0's results). Thread-local because each test runs on its own thread.

use std::cell::Cell;
use translator::JitMode;

thread_local! {
    static MODE: Cell<JitMode> = const { Cell::new(JitMode::Off) };
}

pub fn mode() -> JitMode {
    MODE.with(Cell::get)
}

pub fn set(m: JitMode) {
    MODE.with(|c| c.set(m));
}

/// `jit_forced!(test_a, test_b)`: a `jit_forced` module with each test run under
/// `JitMode::Always`.
macro_rules! jit_forced {
    ($($name:ident),* $(,)?) => {
        mod jit_forced {
            $(
                #[test]
                fn $name() {
                    super::tier::set(translator::JitMode::Always);
                    super::$name();
                }
            )*
        }
    };
}
