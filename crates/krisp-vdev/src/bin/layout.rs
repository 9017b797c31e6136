//! Prints the ring header's field offsets as `name offset` lines, for the C layout test.

fn main() {
    for (name, offset) in krisp_vdev::shm::field_offsets() {
        println!("{name} {offset}");
    }
}
