-- The shop database of `sa-references demo` (SQLite).
CREATE TABLE customer (
    id INTEGER NOT NULL PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    email VARCHAR(100),
    referrer_id INTEGER REFERENCES customer (id)
);
CREATE TABLE address (
    id INTEGER NOT NULL PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    city VARCHAR(100) NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customer (id) ON DELETE CASCADE
);
CREATE TABLE product (
    sku VARCHAR(20) NOT NULL,
    size VARCHAR(10) NOT NULL,
    name VARCHAR(100) NOT NULL,
    PRIMARY KEY (sku, size)
);
CREATE TABLE orders (
    id INTEGER NOT NULL PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customer (id),
    product_sku VARCHAR(20) NOT NULL,
    product_size VARCHAR(10) NOT NULL,
    FOREIGN KEY (product_sku, product_size) REFERENCES product (sku, size)
);
CREATE TABLE tag (
    id INTEGER NOT NULL PRIMARY KEY,
    name VARCHAR(50) NOT NULL UNIQUE
);
CREATE TABLE customer_tag (
    customer_id INTEGER NOT NULL REFERENCES customer (id),
    tag_id INTEGER NOT NULL REFERENCES tag (id),
    PRIMARY KEY (customer_id, tag_id)
);
INSERT INTO customer VALUES
    (1, 'Ada Lovelace', 'ada@example.com', NULL),
    (2, 'Grace Hopper', 'grace@example.com', 1),
    (3, 'ada lovelace', 'ADA@example.com', NULL),
    (4, 'Alan Turing', 'alan@example.com', 3);
INSERT INTO address VALUES (1, 1, 'London'), (2, 3, 'Marylebone, London');
INSERT INTO product VALUES
    ('TEA', 'S', 'Tea, small'), ('TEA', 'M', 'Tea, medium'), ('TEA', 'MED', 'Tea, medium'),
    ('MUG', 'STD', 'Mug');
INSERT INTO orders VALUES
    (1, 1, 'TEA', 'S'), (2, 3, 'MUG', 'STD'), (3, 3, 'TEA', 'MED'), (4, 2, 'TEA', 'M');
INSERT INTO tag VALUES (1, 'vip'), (2, 'newsletter');
INSERT INTO customer_tag VALUES (1, 1), (3, 1), (3, 2);
