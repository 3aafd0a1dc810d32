-- name: coverage_lowest
-- description: Wrong predictions whose saliency covers the least of the object: the latest
-- description: coverage rows with correct = false, lowest ground-truth coverage first (ties by soft
-- description: saliency coverage, then image). Page through it with $limit and $offset.
-- param: model = NULL -- only this target model
-- param: method = NULL -- only this saliency method
-- param: class = NULL -- only images of this label
-- param: limit = 50 -- rows per page
-- param: offset = 0 -- rows to skip
SELECT c.*
FROM coverage AS c
WHERE NOT c.correct
    AND c.gtc IS NOT NULL AND NOT isnan(c.gtc)
    AND ($model IS NULL OR c.model = $model)
    AND ($method IS NULL OR c.method = $method)
    AND ($class IS NULL OR c.label = $class)
ORDER BY c.gtc, c.soft_sc, c.image_id
LIMIT CAST($limit AS INTEGER) OFFSET CAST($offset AS INTEGER)
