//! The bus the assembled test programs run on: nothing behind the ports except 0xE9, where a
//! program reports values (as Bochs' and QEMU's debug port) that the test then compares.

use translator::CpuBus;

#[derive(Default)]
pub struct TestBus {
    pub out: Vec<u32>,
}

impl CpuBus for TestBus {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        if port == 0xE9 {
            self.out.push(value);
        }
    }
}
