//! Under `--cfg loom`: the ring's memory as loom-tracked cells, so the model checker can see
//! every sample access and report a data race if the index orderings allowed one.

use super::ShmError;
use super::layout::{HEADER_BYTES, RawHeader};
use loom::cell::UnsafeCell;

pub(crate) struct Region {
    header: RawHeader,
    cells: Vec<UnsafeCell<f32>>,
    len: usize,
}

impl Region {
    pub(crate) fn heap(len: usize) -> Result<Self, ShmError> {
        let n = (len - HEADER_BYTES as usize) / 4;
        Ok(Self {
            header: RawHeader::new_zeroed(),
            cells: (0..n).map(|_| UnsafeCell::new(0.0)).collect(),
            len,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn header(&self) -> &RawHeader {
        &self.header
    }

    pub(crate) fn sample_count(&self) -> usize {
        self.cells.len()
    }

    /// # Safety
    /// Same contract as the shared-memory version.
    pub(crate) unsafe fn copy_in(&self, at: usize, src: &[f32]) {
        for (i, &v) in src.iter().enumerate() {
            // SAFETY: loom checks that no other access to this cell is concurrent.
            self.cells[at + i].with_mut(|p| unsafe { *p = v });
        }
    }

    /// # Safety
    /// Same contract as the shared-memory version.
    pub(crate) unsafe fn copy_out(&self, at: usize, dst: &mut [f32]) {
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: loom checks that no other access to this cell is concurrent.
            *d = self.cells[at + i].with(|p| unsafe { *p });
        }
    }
}
