//! Input controllers and devices: the 8042 and its PS/2 keyboard and mouse.

pub mod i8042;
pub mod ps2_keyboard;
pub mod ps2_mouse;
