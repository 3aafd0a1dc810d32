-- name: barlow_members
-- description: Which Barlow leaf each image fell in, for the runs `barlow_leaves` shows: one row
-- description: per (run, class group, image), with the image's label, prediction and failure flag.
-- description: Join it with `images` or `samples` on image_id to see a leaf's tags and pictures.
-- param: model = NULL -- only this target model
-- param: class = NULL -- only this class group
-- param: leaf = NULL -- only this leaf (its node id)
WITH shown AS (
    SELECT DISTINCT run_id, "class" FROM barlow_leaves
)
SELECT m.*
FROM barlow_tree_members AS m
JOIN shown ON shown.run_id = m.run_id AND shown."class" = m."class"
WHERE ($model IS NULL OR m.model = $model)
    AND ($class IS NULL OR m."class" = $class)
    AND ($leaf IS NULL OR m.leaf = CAST($leaf AS INTEGER))
ORDER BY m."class", m.leaf, m.image_id
