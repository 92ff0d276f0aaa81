fn main() {
    println!("usage: smtp-source [options] HOST:PORT");
}
